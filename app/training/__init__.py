"""The training engine: pure PyTorch, no web framework, queue or database.

Entry points:
- api.train(config=TrainConfig(...), dataset_dir=..., work_dir=..., cache_dir=...)
- build.list_base_models(), build.check_available(name, pretrained), build.fetch_weights
- inference.Predictor.load(artifact_dir), inference.decode_image(data)
- errors: EngineError subclasses carry `code`, `message` and, where known, `field`.

Reading order: presets -> data -> build (+ efficientnet_lite) -> schedule -> freeze ->
optim -> features -> checkpoint -> loop -> auto -> evaluate -> api -> inference.
"""
