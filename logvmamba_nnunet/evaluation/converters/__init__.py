"""Converters from the paper's four datasets, in their download layout, to nnU-Net raw datasets.

- :mod:`.brats2020` — BraTS 2020, 4 MRI channels, regions ET/TC/WT.
- :mod:`.acdc` — ACDC cine MRI, RV/MYO/LV (nnU-Net's own converter underneath).
- :mod:`.endovis2017` — EndoVis 2017, 7 instrument types, RGB frames.
- :mod:`.neurips_cell` — NeurIPS 2022 cells, interior/boundary labels plus instance maps.
"""
