"""Workers on a Ray cluster: each one a Ray actor holding a whole backend on one device of one node.

``cluster.py`` connects (or starts a local Ray); ``placement.py`` plans the workers and reserves them
in one placement group; ``worker.py`` is the actor; ``samples.py`` hands each loaded sample set to the
workers once; ``proxy.py`` is the driver-side stand-in for one worker, with the backend interface of
``backends/base.py``; ``backend.py`` the backend made of them. Only ``--executor ray`` imports this
package, so a local run never imports Ray.
"""
