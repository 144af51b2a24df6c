"""PixelNet models; each module registers its classes with @register_model("PixelNet")."""
