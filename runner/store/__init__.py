"""What a run keeps on disk: the run directory (`checkpoint.py`: run.json, lock, parts,
compaction), its write-ahead log (`runlog.py`), the output written while the run goes
(`output_stream.py`), atomic files (`files.py`), and the response cache (`cache.py`)."""
