"""The credentials of the test suite's private registry (htpasswd basic auth).

The ``private_registry`` and ``private_plugin`` fixtures in conftest.py use them; tests
that must prove a secret never leaks grep for ``PASSWORD``.
"""

USER, PASSWORD = "robot", "pod-secret-Zq8u"
