"""The data side: the SMS Spam Collection and your own tables, fetched or read, checked, balanced, split and prepared."""
