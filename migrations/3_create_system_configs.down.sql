DROP TABLE system_configs;
