"""Shared caches: the remote tier behind the local LMDB store (Redis, HTTP in the bazel-remote
layout, `ciopt cache serve`), and content-addressed directory snapshots (`ciopt cache save`)."""
