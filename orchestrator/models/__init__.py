"""What a trial trains: the backbone registry (`backbones`, no TensorFlow), the Keras classifier
around it and where its weights come from (`classifier`), the frequency stream (`frequency`), how
several heads' targets and predictions share one matrix (`heads`, pure numpy), and the weights
folders of air-gapped clusters (`weights`, `python -m orchestrator.weights`). Import the module
you need: this package imports nothing, so the light ones stay free of TensorFlow."""
