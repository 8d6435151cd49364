"""The model registry's names without importing Keras, so flags can list them cheaply.

tests/test_models.py checks that this list equals `lrbs_tf.models.ARCHS`.
"""

ARCH_NAMES = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
              "vgg11", "vgg13", "vgg16", "vgg19", "alexnet", "mlp")
