"""The preprocessed image cache: JPEG -> resized uint8 arrays on disk, one per input size.

prepare.py (what a run needs; ``python -m qsl.cache.prepare``) -> build.py (write new arrays) ->
decode_pool.py + jpeg.py (decode and resize) ; store.py (the folder's bookkeeping), lock.py (one writer),
reader.py (the layout, and opening a view for the QSL).
"""
