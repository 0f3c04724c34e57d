"""The path-mapping model shared by the client and the worker (pure, standard library only).

:mod:`.model` holds spellings, mappings, refusals and the lexical mount test;
:mod:`.infer` infers prefix rules from evidence and orders proposals.
"""
