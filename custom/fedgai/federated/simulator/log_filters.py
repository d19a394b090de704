"""Console log filters for NVFlare's processes (named in their log config by `fedgai simulate`). Standard library
only: NVFlare's processes import this while they configure logging, before anything else."""

from __future__ import annotations

import logging
import re


class MoreResultsThanRequired(logging.Filter):
    """Drops NVFlare's "Number of results (N) is different from number of expected responses (M)" when N > M:
    the controller asks for fed.min_clients results and waits fed.straggler_grace for the rest, so more results
    than the minimum is the normal, good case, not a console warning every round."""

    PATTERN = re.compile(r"Number of results \((\d+)\) is different from number of expected responses \((\d+)\)")

    def filter(self, record: logging.LogRecord) -> bool:
        found = self.PATTERN.search(record.getMessage())
        return not found or int(found[1]) < int(found[2])
