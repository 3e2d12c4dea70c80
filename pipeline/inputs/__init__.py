"""What clients send: image files (decode), image text (URL, base64, data URL), remote fetches, prompts."""
