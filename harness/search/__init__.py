"""Architecture search: an Optuna study whose trials are harness runs on the Ray pool.

space.py (the default space), space_file.py (loading one), study.py (the Optuna side: storage, settings,
summaries), driver.py (trials as runs; the study has one owner), export.py (a trial as an architecture file).
The Ray session and the drive loop are harness/studies/'s, which sweeps use too (it says why search stays here).
"""
