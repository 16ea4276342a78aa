"""Parts of the handover Airflow plugin (see ../handover_plugin.py).

Kept out of Airflow's plugin scan by ../.airflowignore: the plugin module imports them,
and only the parts a process needs (workers never build the web app).
"""
