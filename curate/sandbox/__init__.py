"""A sandbox for hostile model-written code: bubblewrap where available, rlimits and an unprivileged uid always."""
