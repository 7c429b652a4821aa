"""N2D2 INI network files: `load_ini(path)` builds a `DeepNetCell`; `n2d2 run MODEL.ini` trains it.

- `parser`: lexing, sections, inheritance, templates, `[section]Key` / `${VAR}` / `$(expr)`
  substitution, typed readers;
- `builder`: database, stimuli provider and transformations, layers, mappings, solvers,
  fillers, targets -> `DeepNetCell`;
- `runner`: N2D2's command line (`-learn N -log M -test`).

Every problem in a file is an `IniError` (a `ValueError`) naming the file, section and line.
"""
from n2d2.frontends.ini.builder import load_ini
from n2d2.frontends.ini.parser import IniError, IniWarning, parse_file, parse_string

__all__ = ["load_ini", "IniError", "IniWarning", "parse_file", "parse_string"]
