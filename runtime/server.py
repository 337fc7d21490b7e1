"""Placeholder: filled in by the next commit."""


def add_arguments(parser) -> None:
    parser.add_argument("--bundle", required=True)


def main(args) -> int:
    raise NotImplementedError("python -m runtime serve is not written yet")
