"""What an admin builds and ships: the plain and DP jobs (``job``), the HE job and the export of all three
(``he_job``), the classes they name (``allow_list``), and the hardening of provisioned startup kits (``kits``)."""
