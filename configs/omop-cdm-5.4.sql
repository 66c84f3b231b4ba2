-- OMOP Common Data Model v5.4: the tables Escalate reads and `escalate simulate --format omop` writes.
-- Columns, types and NOT NULL flags follow the official CDM v5.4 DDL (OHDSI/CommonDataModel,
-- inst/ddl/5.4/duckdb and .../postgresql; Apache-2.0); the other CDM tables are not used. Dialect: DuckDB
-- (the PostgreSQL DDL has the same columns and types). Primary keys, foreign keys and indices are left out.
CREATE TABLE person (
  person_id integer NOT NULL, gender_concept_id integer NOT NULL, year_of_birth integer NOT NULL,
  month_of_birth integer, day_of_birth integer, birth_datetime timestamp, race_concept_id integer NOT NULL,
  ethnicity_concept_id integer NOT NULL, location_id integer, provider_id integer, care_site_id integer,
  person_source_value varchar(50), gender_source_value varchar(50), gender_source_concept_id integer,
  race_source_value varchar(50), race_source_concept_id integer, ethnicity_source_value varchar(50),
  ethnicity_source_concept_id integer);
CREATE TABLE observation_period (
  observation_period_id integer NOT NULL, person_id integer NOT NULL,
  observation_period_start_date date NOT NULL, observation_period_end_date date NOT NULL,
  period_type_concept_id integer NOT NULL);
CREATE TABLE condition_occurrence (
  condition_occurrence_id integer NOT NULL, person_id integer NOT NULL, condition_concept_id integer NOT NULL,
  condition_start_date date NOT NULL, condition_start_datetime timestamp, condition_end_date date,
  condition_end_datetime timestamp, condition_type_concept_id integer NOT NULL,
  condition_status_concept_id integer, stop_reason varchar(20), provider_id integer, visit_occurrence_id integer,
  visit_detail_id integer, condition_source_value varchar(50), condition_source_concept_id integer,
  condition_status_source_value varchar(50));
CREATE TABLE drug_exposure (
  drug_exposure_id integer NOT NULL, person_id integer NOT NULL, drug_concept_id integer NOT NULL,
  drug_exposure_start_date date NOT NULL, drug_exposure_start_datetime timestamp,
  drug_exposure_end_date date NOT NULL, drug_exposure_end_datetime timestamp, verbatim_end_date date,
  drug_type_concept_id integer NOT NULL, stop_reason varchar(20), refills integer, quantity numeric,
  days_supply integer, sig text, route_concept_id integer, lot_number varchar(50), provider_id integer,
  visit_occurrence_id integer, visit_detail_id integer, drug_source_value varchar(50),
  drug_source_concept_id integer, route_source_value varchar(50), dose_unit_source_value varchar(50));
CREATE TABLE measurement (
  measurement_id integer NOT NULL, person_id integer NOT NULL, measurement_concept_id integer NOT NULL,
  measurement_date date NOT NULL, measurement_datetime timestamp, measurement_time varchar(10),
  measurement_type_concept_id integer NOT NULL, operator_concept_id integer, value_as_number numeric,
  value_as_concept_id integer, unit_concept_id integer, range_low numeric, range_high numeric,
  provider_id integer, visit_occurrence_id integer, visit_detail_id integer, measurement_source_value varchar(50),
  measurement_source_concept_id integer, unit_source_value varchar(50), unit_source_concept_id integer,
  value_source_value varchar(50), measurement_event_id integer, meas_event_field_concept_id integer);
CREATE TABLE observation (
  observation_id integer NOT NULL, person_id integer NOT NULL, observation_concept_id integer NOT NULL,
  observation_date date NOT NULL, observation_datetime timestamp, observation_type_concept_id integer NOT NULL,
  value_as_number numeric, value_as_string varchar(60), value_as_concept_id integer,
  qualifier_concept_id integer, unit_concept_id integer, provider_id integer, visit_occurrence_id integer,
  visit_detail_id integer, observation_source_value varchar(50), observation_source_concept_id integer,
  unit_source_value varchar(50), qualifier_source_value varchar(50), value_source_value varchar(50),
  observation_event_id integer, obs_event_field_concept_id integer);
CREATE TABLE death (
  person_id integer NOT NULL, death_date date NOT NULL, death_datetime timestamp,
  death_type_concept_id integer, cause_concept_id integer, cause_source_value varchar(50),
  cause_source_concept_id integer);
CREATE TABLE concept (
  concept_id integer NOT NULL, concept_name varchar(255) NOT NULL, domain_id varchar(20) NOT NULL,
  vocabulary_id varchar(20) NOT NULL, concept_class_id varchar(20) NOT NULL, standard_concept varchar(1),
  concept_code varchar(50) NOT NULL, valid_start_date date NOT NULL, valid_end_date date NOT NULL,
  invalid_reason varchar(1));
CREATE TABLE concept_ancestor (
  ancestor_concept_id integer NOT NULL, descendant_concept_id integer NOT NULL,
  min_levels_of_separation integer NOT NULL, max_levels_of_separation integer NOT NULL);
CREATE TABLE drug_strength (
  drug_concept_id integer NOT NULL, ingredient_concept_id integer NOT NULL, amount_value numeric,
  amount_unit_concept_id integer, numerator_value numeric, numerator_unit_concept_id integer,
  denominator_value numeric, denominator_unit_concept_id integer, box_size integer,
  valid_start_date date NOT NULL, valid_end_date date NOT NULL, invalid_reason varchar(1));
