"""The federation on NVIDIA FLARE, in rooms by who runs the code (docs/architecture.md, module map):

- ``studio/``: what runs at a studio: the Client-API script, its executor, its own HE sealing, its check of every
  global, the outbound audit, and the training slots studios sharing one machine take turns on;
- ``server/``: what runs at the server: the plain and the HE server, screening, validation, the state it
  remembers, the round summary and the progress line;
- ``jobs/``: what an admin builds and ships: the three jobs, the classes they name (the sites' allow-list), and
  the hardening of startup kits;
- ``simulator/``: a whole federation on one machine: NVFlare's simulator (``fedgai simulate``) and the
  in-process federation every benchmark runs;
- here, on this floor, what both sides share: one round's steps (``round.py``, ``aggregation.py``), the
  feature-space fingerprint, and the HE parameters and wire format (``he_keys.py``, ``he_wire.py``).

studio/ and server/ never import each other, the shared modules import no room, and jobs/ never imports the
simulator (tests/test_architecture.py).
"""
