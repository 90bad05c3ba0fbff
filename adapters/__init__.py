"""Province adapters: legacy exports (GBK CSV, fixed-width, XML, DBF, Excel, JSON Lines) into
standard records (``hutong.v1.PersonRecord``), by one declarative profile per source, with every
row accounted for: a record, or a reject naming every problem.

* :mod:`adapters.profile` — ``load_profile``: the TOML profile, validated key by key;
* readers (:mod:`adapters.csv_reader`, :mod:`adapters.fixed_width_reader`,
  :mod:`adapters.jsonl_reader`, :mod:`adapters.xml_reader`, :mod:`adapters.dbf_reader`,
  :mod:`adapters.xlsx_reader`) — streaming, one :class:`adapters.source.SourceRow` per row;
* :mod:`adapters.mapping` — a row to a record, checked with the hub's own rules;
* :mod:`adapters.run` — ``adapt``: files through a profile, with a summary.

The profile format is documented in ``adapters/README.md``.
"""
