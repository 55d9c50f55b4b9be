"""LoRA Lab's engine: GPT-2 + LoRA fine-tuning for SMS spam classification, with no UI code.

Import what you need from the submodules (`engine.runs.run.fine_tune`, `engine.classifier.Classifier`, ...);
importing the package itself loads nothing.
"""

__version__ = "0.1.0"
