"""The rules of Conveyor: no engine and no web framework is imported here."""
