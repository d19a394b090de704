"""A whole federation on one machine: NVFlare's simulator (``simulate``: ``fedgai simulate``, with its console log
filters in ``log_filters``) and the in-process federation every benchmark runs (``inprocess``)."""
