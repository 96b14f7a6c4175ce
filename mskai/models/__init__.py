"""Model packages (folder or zip: metadata, safetensors weights), the networks they may name, where they live."""
