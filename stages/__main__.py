"""``python -m stages``: the pipeline's command line."""

from stages.app import app

if __name__ == "__main__":
    app(prog_name="python -m stages")
