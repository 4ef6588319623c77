"""``python -m doctorjob.benchmark worker|raw-worker``: one worker process of the bench."""
from doctorjob.benchmark.workers import main

main()
