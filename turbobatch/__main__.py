"""``python -m turbobatch render|status|verify ...``: the same entry point as the ``turbobatch`` command."""

from turbobatch.jobs.cli import console_main

if __name__ == "__main__":
    console_main()
