"""Names the node scheduler (``_service.py``) still imports from here, where they lived before the owner
became ``ember.scheduler._owner``. Delete this module once ``_service.py`` imports them from their homes."""

from ember.scheduler._session import log_conninfo as _log_conninfo
from ember.scheduler._spec import FailureCause

__all__ = ["FailureCause", "_log_conninfo"]
