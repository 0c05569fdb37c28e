"""Converters from raw dataset trees to JSONL record lists (the released AA-CLIP format).

One module per raw layout, each with ``convert(root) -> list[dict]`` and a CLI
``python -m data_prep.<name> --root RAW_ROOT [--out OUT.jsonl]`` (default out:
``RAW_ROOT/test.jsonl``; exit code 2 with a one-line message on a non-matching tree):

- ``mvtec``: MVTec-AD, ``<cls>/test/<defect|good>/*.png``
- ``mpdd``: MPDD, the MVTec layout
- ``visa``: VisA, test split of ``split_csv/1cls.csv``
- ``btad``: BTAD, ``<01|02|03>/test/{ok,ko}/*``
- ``bmad``: BMAD Brain / Liver / Retina, ``test/{good,Ungood}/img/*.png``
- ``colon``: CVC-ClinicDB, CVC-ColonDB, Kvasir, CVC-300, ``images/*.png`` + ``masks/``
- ``mvfa``: the six MVFA-AD medical sets, test records and few-shot seed files

Shared helpers (errors, listing, atomic writing, the CLI) live in ``_common``.
"""
