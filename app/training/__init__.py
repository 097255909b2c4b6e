"""The training engine: pure PyTorch, no web framework, queue or database.

Entry points:
- api.train(config=TrainConfig(...), dataset_dir=..., work_dir=..., cache_dir=...)
  (images, text or tabular: the dataset's task picks the loader; the loop is one)
- config.TrainConfig: the job contract, every option declared once (the API's JobSpec
  is derived from it)
- build.list_base_models(), build.check_available(name, pretrained), build.fetch_weights
- inference.load_predictor(artifact_dir) (any task), inference.Predictor.load (images),
  inference.decode_image(data)
- uploads.inspect_upload(path, architecture): uploaded safetensors, never a pickle
- errors: EngineError subclasses carry `code`, `message` and, where known, `field`.

Reading order: atomic -> presets -> data (+ the data protocol) -> csvdata -> text, tabular
-> build (+ efficientnet_lite) -> schedule -> freeze -> optim -> features -> checkpoint ->
loop -> config -> auto -> evaluate -> artifact -> api -> inference -> export -> uploads.
"""
