"""The embedded "shapes world": a seeded image generator, an exact oracle, and the model trained on them.

* :mod:`~img2img_lab.shapes.world` — scenes, captions, rendering, datasets;
* :mod:`~img2img_lab.shapes.oracle` — a classical reader of shape, colour and background;
* :mod:`~img2img_lab.shapes.tokenizer` — the closed-vocabulary CLIP BPE tokenizer;
* :mod:`~img2img_lab.shapes.train` — ``python -m img2img_lab.shapes.train --out DIR --minutes M --seed S``;
* :mod:`~img2img_lab.shapes.evaluate` — the oracle-scored evaluation behind the model card.
"""
