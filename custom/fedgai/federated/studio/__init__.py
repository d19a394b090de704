"""What runs at a studio: the Client-API script (``client``), the executor that runs it and seals its update
under HE (``executor``, ``he_studio``), the check of every global it receives (``global_check``), the record of
everything that leaves (``audit``), and the slots studios on one machine take turns on (``slots``)."""
