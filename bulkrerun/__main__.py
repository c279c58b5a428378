"""The ``bulkrerun`` command; ``python -m bulkrerun`` works the same."""

from bulkrerun.interrupt import interrupt


def main() -> None:
    """Console-script entry point. Signals are taken before the CLI's imports (a few hundred
    milliseconds): a Ctrl-C there ends with 130 and the command to run again, like one
    anywhere else, instead of a traceback of the import."""
    interrupt.install(raising=False)
    from bulkrerun.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
