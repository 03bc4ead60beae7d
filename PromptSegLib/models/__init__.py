"""Segmentation model folders (config, weights, card, checksums), the DuPLUS network, the catalogue that routes
a request to a model, and weight averaging. The bundled model folders and ``catalogue.json`` live here too."""
