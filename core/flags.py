"""A flag of transformers' HfArgumentParser as a dataclass field, on one line: its default and its --help."""

from dataclasses import field


def option(default, help):
    return field(default=default, metadata={"help": help})
