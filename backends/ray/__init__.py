"""Workers on a Ray cluster: each one a Ray actor holding a whole backend on one device of one node.

``cluster.py`` connects (or starts a local Ray) and plans where the workers go; ``worker.py`` is the
actor; ``proxy.py`` the driver-side stand-in for one worker, with the backend interface of
``backends/base.py``; ``backend.py`` the backend made of them. Only ``--executor ray`` imports this
package, so a local run never imports Ray.
"""
