"""A deterministic COCO-format data set of drawn objects: dataset.py writes it, silhouettes.py draws them."""
