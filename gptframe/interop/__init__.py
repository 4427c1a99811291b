"""Interoperability with other ecosystems: Hugging Face transformers model directories (`gptframe.interop.hf`)."""
