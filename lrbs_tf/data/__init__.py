"""Datasets: what each is (`specs`, no TensorFlow), loading and checking its arrays (`loaders`), and the
tf.data pipelines that feed training (`pipelines`)."""
