"""Models: the registry of architecture names and what each needs (`registry`, no Keras), and the Keras
builders (`builders`, a dict of name -> builder)."""
