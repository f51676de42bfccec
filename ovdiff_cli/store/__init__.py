"""The persistent LMDB cache (`cache_schema.md`): keys from settings alone, self-checking blobs, the
bounds-checked file reader, verify/repair, and .safetensors export/import."""
