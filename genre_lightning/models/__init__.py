"""Networks, with no training and no Lightning: timm backbones by name (``backbone``), flip test-time
augmentation (``flip``), an ensemble as one network (``ensemble``), and the network of a model's
hyper-parameters (``network``)."""
