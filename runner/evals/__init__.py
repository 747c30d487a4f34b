"""After a run: the job file (`jobfile.py`), scoring the output (`score.py`), reports
(`report.py`), and the end of an eval job (`evaluate.py`)."""
