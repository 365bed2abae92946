"""What the tests share: clients of Baton, certificates, golden MariaDB bytes and harnesses.
Imported as ``tests.support...`` (pytest puts the repository root on the path)."""
