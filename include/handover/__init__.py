"""handover: telecom customer-data migration on Airflow (library; DAGs live in dags/).

Arrow's memory pool is chosen here, before any handover module imports pyarrow: Arrow
reads ARROW_DEFAULT_MEMORY_POOL once, when pyarrow is first imported. jemalloc returns
what a task frees; mimalloc (pyarrow's default) kept it, and each task's peak RSS was
60-300 MB higher for the same work (docs/performance.md). A value set outside wins.
"""

import os

os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
