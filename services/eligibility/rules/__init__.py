"""Rule data (YAML), one file per programme rule-set version, plus coverage areas: no code here."""
