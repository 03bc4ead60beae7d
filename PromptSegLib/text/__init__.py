"""Words: modality names, the vocabulary of targets and regions, prompt sentences, the frozen text encoder and
Slicer terminology."""
