"""The network: every `nn.Module` of AVESFormer and of the AVSegFormer baseline, one component per file.

Backbones (`visual_encoder`), the VGGish log-mel front end and audio encoders (`audio_frontend`,
`audio_encoder`), the neck, the query generators (PQG and AVSegFormer's), the ELF decoder, AVSegFormer's
deformable transformer, the shared mask head, and `avs_model` that joins them. Built from a config by
`model.build`; nothing here reads files, trains or measures.
"""
