"""The HTTP server of src.serve and src.demo: uploads checked and decoded (images.py), concurrent requests batched
into one forward pass (batcher.py), the routes (app.py), the demo page and its overlays (page.py, explainer.py)."""
