"""Reading a capture: records of a file (damage, salvage), frames to records, legacy text."""
