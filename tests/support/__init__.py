"""What the tests share: the Baton launcher, certificates, golden MariaDB bytes and the
monitor harness. Imported as ``tests.support...`` (pytest puts the repository root on the path)."""
