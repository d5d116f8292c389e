"""Models, with no training and no Lightning: timm backbones by name (``backbone``), several backbones
under one head (``multi_backbone``), pooled features as a module (``pooled_features``), flip test-time
augmentation (``flip``), an ensemble as one network (``ensemble``), the network of a model's
hyper-parameters (``network``), checkpoint reading (``checkpoint_io``), and what a model's logits
mean, its probabilities and decisions (``prediction_task``: the prediction half of the task objects,
which training extends). The predictor needs these and nothing of ``training``."""
